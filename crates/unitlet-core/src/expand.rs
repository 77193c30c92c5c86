//! Kubernetes `$(VAR)` expansion for env values, command and args.
//!
//! Rules (as the kubelet applies them): `$(NAME)` becomes the value of NAME
//! when it is defined and stays literally `$(NAME)` when it is not; `$$`
//! becomes `$`, so `$$(NAME)` yields the literal `$(NAME)`; a `$` followed by
//! anything else, or an unclosed `$(`, is kept as written.

/// Expands `input` looking names up with `lookup`.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if after.is_empty() {
            out.push('$');
            rest = after;
        } else if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(end) => {
                    let name = &body[..end];
                    match lookup(name) {
                        Some(v) => out.push_str(&v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = body;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "A" => Some("alpha".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn table() {
        let cases = [
            ("$(A)", "alpha"),
            ("x$(A)y", "xalphay"),
            ("$(B)", "$(B)"),
            ("$$(A)", "$(A)"),
            ("$$$(A)", "$alpha"),
            ("$$", "$"),
            ("$", "$"),
            ("a$", "a$"),
            ("$(A", "$(A"),
            ("$(", "$("),
            ("$x", "$x"),
            ("$(EMPTY)z", "z"),
            ("$()", "$()"),
            ("100%", "100%"),
            ("$(A)$(A)", "alphaalpha"),
        ];
        for (input, want) in cases {
            assert_eq!(expand(input, env), want, "input {input:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn no_dollar_is_identity(s in "[^$]*") {
            proptest::prop_assert_eq!(expand(&s, env), s);
        }

        #[test]
        fn escaped_references_are_literal(name in "[A-Z]{1,8}") {
            let input = format!("$$({name})");
            proptest::prop_assert_eq!(expand(&input, env), format!("$({name})"));
        }
    }
}
