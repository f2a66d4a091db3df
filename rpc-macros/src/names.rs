//! How generated names are made from the user's.

/// `foo_bar` to `FooBar`: the request and response variant of a method.
pub(crate) fn upper_camel(snake: &str) -> String {
    snake
        .split('_')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_uppercase().chain(chars).collect()
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::upper_camel;

    #[test]
    fn converts_snake_case() {
        assert_eq!(upper_camel("add"), "Add");
        assert_eq!(upper_camel("get_user_by_id"), "GetUserById");
        assert_eq!(upper_camel("_private__thing_"), "PrivateThing");
        assert_eq!(upper_camel("fooBar"), "FooBar");
        assert_eq!(upper_camel("add2"), "Add2");
    }
}
