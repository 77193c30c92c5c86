//! Small rules shared by validation (`manifest`) and translation
//! (`translate`): limits of Linux and systemd, and what a name may look like.
//!
//! A leaf: it imports nothing from the rest of `core`, so both sides can
//! depend on it without depending on each other.

/// Linux refuses a single argv or environment string longer than this (MAX_ARG_STRLEN).
pub const MAX_ARG_STRLEN: usize = 128 * 1024;

/// The image name that means "run a binary from the host".
pub const HOST_IMAGE: &str = "host";

/// Whether `s` is an RFC 1123 DNS label (container and namespace names).
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// systemd 252 only accepts environment names that are shell identifiers.
/// Whether systemd takes `s` as an environment variable name.
pub fn is_env_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_dns_label("a-1"));
        assert!(!is_dns_label("-a") && !is_dns_label("A") && !is_dns_label(""));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(is_env_name("_A1") && is_env_name("a"));
        assert!(!is_env_name("1A") && !is_env_name("A-B") && !is_env_name(""));
    }
}
