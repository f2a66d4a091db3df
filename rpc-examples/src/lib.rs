//! Services shared by the example programs.
