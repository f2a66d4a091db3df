//! Shared test services.
