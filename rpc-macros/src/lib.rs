//! The `#[service]` attribute. Use it through `rpc_core::service`, whose documentation says what
//! it generates.
//!
//! The work is split by phase: `parse` turns the trait into a plain model and reports every
//! shape it cannot serve, `validate` checks the rules between methods, `expand` writes the
//! code. Every error is spanned at the token that breaks the rule.

mod expand;
mod fingerprint;
mod names;
mod parse;
mod validate;

use proc_macro::TokenStream;

/// Turns a trait into a remotely callable service. See `rpc_core::service`.
#[proc_macro_attribute]
pub fn service(args: TokenStream, input: TokenStream) -> TokenStream {
    let args = proc_macro2::TokenStream::from(args);
    let input = proc_macro2::TokenStream::from(input);
    match generate(args, input.clone()) {
        Ok(output) => output.into(),
        // Keep the user's trait so that its other uses still resolve, and add the errors.
        Err(error) => {
            let mut output = without_rpc_attributes(input);
            output.extend(error.into_compile_error());
            output.into()
        }
    }
}

/// The trait as written, less the `#[rpc(...)]` attributes only this macro understands.
fn without_rpc_attributes(input: proc_macro2::TokenStream) -> proc_macro2::TokenStream {
    let Ok(mut item) = syn::parse2::<syn::ItemTrait>(input.clone()) else {
        return input;
    };
    for trait_item in &mut item.items {
        if let syn::TraitItem::Fn(function) = trait_item {
            function.attrs.retain(|attr| !attr.path().is_ident("rpc"));
        }
    }
    quote::ToTokens::into_token_stream(item)
}

fn generate(
    args: proc_macro2::TokenStream,
    input: proc_macro2::TokenStream,
) -> syn::Result<proc_macro2::TokenStream> {
    if !args.is_empty() {
        return Err(syn::Error::new_spanned(
            args,
            "#[service] takes no arguments",
        ));
    }
    let item: syn::ItemTrait = syn::parse2(input)?;
    let mut errors = parse::Errors::default();
    let service = parse::service(item, &mut errors);
    validate::service(&service, &mut errors);
    errors.finish()?;
    Ok(expand::service(&service))
}

#[cfg(test)]
mod tests {
    use quote::quote;

    #[test]
    fn doc_comments_carry_over_to_the_client_method() {
        let output = super::generate(
            quote!(),
            quote! {
                pub trait Calc {
                    /// Adds two numbers.
                    async fn add(&self, a: i64, b: i64) -> i64;
                }
            },
        )
        .expect("expands")
        .to_string();
        assert_eq!(
            output.matches("Adds two numbers.").count(),
            2,
            "once on the trait method, once on the client method: {output}"
        );
    }

    #[test]
    fn every_error_is_reported_in_one_pass() {
        let error = super::generate(
            quote!(),
            quote! {
                pub trait Calc {
                    fn add(&self) -> i64;
                    async fn connect(&self);
                }
            },
        )
        .expect_err("two problems");
        assert_eq!(error.into_iter().count(), 2);
    }
}
