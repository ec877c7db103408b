//! Java `.properties` parsing, enough for `server.properties` and
//! `meta.properties` as Kafka writes and reads them.

use std::collections::BTreeMap;

/// Parses properties text: `key=value`, `key: value` or `key value`,
/// `#`/`!` comments, backslash line continuations and escapes.
pub fn parse(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut logical = String::new();
    let mut continuing = false;
    for raw in text.lines() {
        let line = if continuing {
            raw.trim_start()
        } else {
            let t = raw.trim_start();
            if t.is_empty() || t.starts_with('#') || t.starts_with('!') {
                continue;
            }
            t
        };
        // A line continues when it ends with an odd number of backslashes.
        let trailing = line.bytes().rev().take_while(|&b| b == b'\\').count();
        if trailing % 2 == 1 {
            logical.push_str(&line[..line.len() - 1]);
            continuing = true;
            continue;
        }
        logical.push_str(line);
        continuing = false;
        let (k, v) = split_key_value(&logical);
        out.insert(k, v);
        logical.clear();
    }
    if !logical.is_empty() {
        let (k, v) = split_key_value(&logical);
        out.insert(k, v);
    }
    out
}

fn split_key_value(line: &str) -> (String, String) {
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    let mut key_end = chars.len();
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            '=' | ':' | ' ' | '\t' | '\x0c' => {
                key_end = i;
                break;
            }
            _ => i += 1,
        }
    }
    let key: String = chars[..key_end.min(chars.len())].iter().collect();
    let mut j = key_end;
    while j < chars.len() && matches!(chars[j], ' ' | '\t' | '\x0c') {
        j += 1;
    }
    if j < chars.len() && matches!(chars[j], '=' | ':') {
        j += 1;
        while j < chars.len() && matches!(chars[j], ' ' | '\t' | '\x0c') {
            j += 1;
        }
    }
    let value: String = chars[j.min(chars.len())..].iter().collect();
    (unescape(&key), unescape(&value))
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('f') => out.push('\x0c'),
            Some('u') => {
                let hex: String = it.by_ref().take(4).collect();
                match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                    Some(ch) => out.push(ch),
                    None => {
                        out.push_str("\\u");
                        out.push_str(&hex);
                    }
                }
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parses_separators_comments_and_continuations() {
        let p = parse(
            "# comment\n! also\nlog.dirs=/a,\\\n    /b\nnode.id : 3\nkey value with spaces\n\
             esc\\=aped=x\\ty\nempty=\n",
        );
        assert_eq!(p["log.dirs"], "/a,/b");
        assert_eq!(p["node.id"], "3");
        assert_eq!(p["key"], "value with spaces");
        assert_eq!(p["esc=aped"], "x\ty");
        assert_eq!(p["empty"], "");
        assert_eq!(p.len(), 5);
    }

    #[test]
    fn unicode_escape() {
        let p = parse("a=caf\\u00e9\n");
        assert_eq!(p["a"], "café");
    }
}
