//! Redaction rules for log lines: defence in depth behind the rule that credentials and
//! request bodies are never logged in the first place.

use std::sync::LazyLock;

use regex::Regex;

struct Rule {
    pattern: Regex,
    replacement: &'static str,
}

static RULES: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    let rule = |pattern: &str, replacement: &'static str| Rule {
        pattern: Regex::new(pattern).expect("redaction pattern compiles"),
        replacement,
    };
    vec![
        // JWTs: three base64url parts, the first a JSON header ("eyJ").
        rule(
            r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*",
            "[REDACTED_JWT]",
        ),
        // Inferno API keys.
        rule(r"inf_[A-Za-z0-9]{8,}", "inf_[REDACTED]"),
        // Any bearer credential.
        rule(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+", "${1}[REDACTED]"),
        // password fields in JSON (plain or escaped inside a string), key=value or key: value.
        rule(
            r#"(?i)((?:\\?")?[a-z_]*password(?:\\?")?\s*[:=]\s*)(\\?"(?:[^"\\]|\\[^"])*\\?"|[^\s,;&}]+)"#,
            "${1}[REDACTED]",
        ),
        // Credentials in a URL (`nats://user:password@host`, `postgres://...`).
        rule(
            r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/@:]*:[^\s/@]*@",
            "${1}[REDACTED]@",
        ),
        // Email addresses.
        rule(
            r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
            "[REDACTED_EMAIL]",
        ),
    ]
});

/// Scrubs API keys, JWTs, bearer tokens, password values and email addresses from `line`.
pub fn redact(line: &str) -> String {
    let mut out = std::borrow::Cow::Borrowed(line);
    for rule in RULES.iter() {
        if rule.pattern.is_match(&out) {
            out = std::borrow::Cow::Owned(
                rule.pattern
                    .replace_all(&out, rule.replacement)
                    .into_owned(),
            );
        }
    }
    out.into_owned()
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn scrubs_each_kind_of_secret() {
        let line = r#"login {"username":"bob","password":"hunter2 is long"} key=inf_AbCdEfGh0123456789abcdefghijKLMNOP token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig-part_x mail bob@example.com"#;
        let out = redact(line);
        assert!(!out.contains("hunter2"), "{out}");
        assert!(!out.contains("inf_AbCdEf"), "{out}");
        assert!(!out.contains("eyJhbGci"), "{out}");
        assert!(!out.contains("bob@example.com"), "{out}");
        assert!(out.contains("\"username\":\"bob\""), "{out}");
    }

    #[test]
    fn escaped_json_password_is_scrubbed() {
        let line = r#"msg="{\"password\":\"s3cret-value\"}""#;
        assert!(!redact(line).contains("s3cret"));
    }

    #[test]
    fn url_credentials_are_scrubbed() {
        let out = redact("connecting to nats://inferno:pa55word@nats.internal:4222 failed");
        assert!(
            !out.contains("pa55word") && !out.contains("inferno:"),
            "{out}"
        );
        assert!(
            out.contains("nats://[REDACTED]@nats.internal:4222"),
            "{out}"
        );
        let plain = "nats://127.0.0.1:4222";
        assert_eq!(redact(plain), plain);
    }

    #[test]
    fn ordinary_text_is_untouched() {
        let line = "GET /api/v1/models 200 3.2ms";
        assert_eq!(redact(line), line);
    }
}
