//! A method's fingerprint: a hash of its signature as written, so that a client and a server
//! built from different versions of a trait notice when a method's types changed.

use proc_macro2::TokenStream;

/// FNV-1a (64-bit) of `name(arg, arg) -> output`, each type as its token text.
pub(crate) fn method(name: &str, args: &[TokenStream], output: &TokenStream) -> u64 {
    let args: Vec<String> = args.iter().map(ToString::to_string).collect();
    let signature = format!("{name}({}) -> {output}", args.join(", "));
    fnv1a(signature.as_bytes())
}

fn fnv1a(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    #[test]
    fn fnv1a_matches_the_reference_values() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn changes_with_any_part_of_the_signature() {
        let base = method("add", &[quote!(i64), quote!(i64)], &quote!(i64));
        assert_eq!(
            base,
            method("add", &[quote!(i64), quote!(i64)], &quote!(i64))
        );
        assert_ne!(
            base,
            method("sub", &[quote!(i64), quote!(i64)], &quote!(i64))
        );
        assert_ne!(
            base,
            method("add", &[quote!(i64), quote!(i32)], &quote!(i64))
        );
        assert_ne!(base, method("add", &[quote!(i64)], &quote!(i64)));
        assert_ne!(
            base,
            method("add", &[quote!(i64), quote!(i64)], &quote!(u64))
        );
    }
}
