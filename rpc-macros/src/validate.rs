//! Rules between the methods of a service, checked before any code is written.

use std::collections::HashMap;

use crate::parse::{Errors, Service};

/// Inherent methods of the generated client; a trait method of the same name would clash.
pub(crate) const CLIENT_METHODS: &[&str] = &[
    "builder",
    "connect",
    "from_stream",
    "local",
    "sharing",
    "with_deadline",
    "with_metadata",
];

pub(crate) fn service(service: &Service, errors: &mut Errors) {
    let client = format!("{}Client", service.ident);
    let mut variants: HashMap<String, &syn::Ident> = HashMap::new();
    for method in &service.methods {
        if CLIENT_METHODS.contains(&method.name.as_str()) {
            errors.spanned(
                &method.ident,
                format!(
                    "method name `{}` conflicts with the generated `{client}::{}`; rename the method",
                    method.name, method.name
                ),
            );
        }
        let variant = method.variant.to_string();
        if variant.is_empty() || variant == "Self" {
            errors.spanned(
                &method.ident,
                format!(
                    "the method name `{}` makes no usable variant name; rename the method",
                    method.name
                ),
            );
            continue;
        }
        // Methods under `#[cfg]` may share a name with another under the opposite condition.
        if !method.cfgs.is_empty() {
            continue;
        }
        if let Some(first) = variants.insert(variant.clone(), &method.ident) {
            errors.spanned(
                &method.ident,
                format!(
                    "`{first}` and `{}` both become the variant `{variant}` of the generated \
                     enums; rename one of them",
                    method.ident
                ),
            );
        }
    }
}
