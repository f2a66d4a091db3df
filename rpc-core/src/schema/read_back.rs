//! Whether a type reads back what it writes: postcard, the encoding of every call, is not
//! self-describing, so a value's bytes say nothing of its fields but their order, and a reader
//! takes each field in turn. A type whose `Serialize` leaves out a field that its `Deserialize`
//! reads (`#[serde(skip_serializing_if = "Option::is_none")]`, `skip_serializing`), or otherwise
//! disagrees with it, fails every call that carries such a value, or reads it as another
//! value. Each type a service's methods carry is checked once, as its schema is made, with the
//! values its tracing made up ([`Tracer::trace_made`](super::trace::Tracer::trace_made)).

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::protocol::{CodecError, append, decode_exact};

/// Whether every value of `made` reads back as itself: written as a call writes it, read as a
/// call reads it, and written again into the same bytes. `Err` says how one did not. A value
/// whose own `Serialize` refuses it says nothing of the type, and is passed over.
pub(super) fn check<T: Serialize + DeserializeOwned>(made: &[T]) -> Result<(), String> {
    for value in made {
        let mut bytes = Vec::new();
        if append(value, &mut bytes).is_err() {
            continue;
        }
        let back = match decode_exact::<T>(&bytes) {
            Ok(back) => back,
            Err(CodecError::TrailingBytes(left)) => {
                return Err(format!(
                    "a value written as {} bytes was read back from the first {} alone",
                    bytes.len(),
                    bytes.len() - left
                ));
            }
            Err(error) => {
                return Err(format!(
                    "a value written as {} bytes could not be read back: {error}",
                    bytes.len()
                ));
            }
        };
        let mut again = Vec::new();
        if append(&back, &mut again).is_err() || again != bytes {
            return Err(format!(
                "a value written as {} bytes was read back as another value, which writes {}",
                bytes.len(),
                again.len()
            ));
        }
    }
    Ok(())
}
