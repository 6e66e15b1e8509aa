//! The little JSON litefs writes by hand (Consul requests, `/info`): string
//! literals with escaping. serde_json is not a dependency; parsing goes
//! through serde_yaml, since YAML reads JSON.

use std::fmt::Write;

/// `text` as a JSON string literal, quotes included.
pub fn string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // Also what YAML (which reads this JSON back, `status.rs`)
            // refuses or folds inside quotes.
            c if (c as u32) < 0x20
                || matches!(c, '\u{7f}' | '\u{85}' | '\u{2028}' | '\u{2029}')
                || matches!(c, '\u{fffe}' | '\u{ffff}') =>
            {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn strings_are_escaped() {
        assert_eq!(
            super::string("a\"b\\c\n\u{1}é"),
            "\"a\\\"b\\\\c\\n\\u0001é\""
        );
        assert_eq!(super::string("\u{7f}\t"), "\"\\u007f\\t\"");
        // What YAML would refuse or fold, read back unchanged.
        let odd = "a\u{85}b\u{2028}c\u{2029}d\u{fffe}e\u{ffff}";
        assert_eq!(
            super::string(odd),
            "\"a\\u0085b\\u2028c\\u2029d\\ufffee\\uffff\""
        );
        let back: String = serde_yaml::from_str(&super::string(odd)).unwrap();
        assert_eq!(back, odd);
    }
}
