//! Text from outside — other nodes' messages, memos, reasons and names, file names on a
//! stick or a feed, a peer's errors — made safe to print for a person.
//!
//! The rule: every line of human output that can carry such text goes through [`line`]
//! (or, for a message body printed as lines, [`block`]); [`say!`] and [`esay!`] are
//! `println!`/`eprintln!` that do it for the whole line. Our own templates hold no control
//! characters, so escaping the whole line is exact for them and also covers library errors
//! that quote outside text. JSON output (`--json`) is not escaped here: serde_json writes
//! every control character as `\uXXXX`, and the strings stay exact.
//!
//! What is escaped, shown visibly in Rust's notation (`\n`, `\t`, `\r`, `\x1b`, `\u{9b}`,
//! `\u{202e}`):
//! - C0 controls (U+0000–U+001F) and DEL: ESC starts terminal sequences (clear the screen,
//!   set the title, OSC 52 writes the clipboard); CR and LF can forge a line.
//! - C1 controls (U+0080–U+009F): CSI (U+009B) and OSC (U+009D) are single-character
//!   sequence starters for some terminals.
//! - Bidi embeddings, overrides and isolates (U+202A–U+202E, U+2066–U+2069), which make text
//!   show in an order other than its own, and the line and paragraph separators (U+2028,
//!   U+2029). The implicit marks (LRM, RLM, ALM) and the joiners (ZWNJ, ZWJ) that Persian
//!   and Arabic text needs are kept.
//!
//! A backslash is printed as it is: text that already holds `\x1b` reads the same as an
//! escaped ESC, which is harmless; `--json` tells them apart.

use std::borrow::Cow;
use std::fmt::Write;

/// Whether `c` must not reach a terminal raw.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}'
        )
}

fn escape_into(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if c.is_ascii() => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
}

/// `s` as one line: every character above escaped, line breaks and tabs included.
pub fn line(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_unsafe(c) {
            escape_into(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `s` as a block of lines (a message body, a generated text): its line breaks (`\n`,
/// `\r\n`) are kept and every line after the first starts with `indent`, so that nothing
/// in it can start a line where the output's own lines start (a forged "from" header is
/// shown indented, inside the body). Tabs are kept; everything else above is escaped.
pub fn block(s: &str, indent: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for (i, l) in s.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
            out.push_str(indent);
        }
        let l = l.strip_suffix('\r').unwrap_or(l);
        for c in l.chars() {
            if is_unsafe(c) && c != '\t' {
                escape_into(&mut out, c);
            } else {
                out.push(c);
            }
        }
    }
    out
}

/// `println!` for a line that can carry text from outside: the whole line through [`line`].
macro_rules! say {
    ($($t:tt)*) => {
        $crate::cli::out::outln!("{}", $crate::cli::safe::line(&format!($($t)*)))
    };
}

/// `eprintln!` for a line that can carry text from outside: the whole line through [`line`].
macro_rules! esay {
    ($($t:tt)*) => {
        $crate::cli::out::errln!("{}", $crate::cli::safe::line(&format!($($t)*)))
    };
}

pub(crate) use {esay, say};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_unchanged_and_not_copied() {
        for s in ["hello B", "سلام، خوبی؟", "a\\x1b b", "payé 15 credits", ""] {
            assert!(matches!(line(s), Cow::Borrowed(t) if t == s), "{s:?}");
            assert_eq!(block(s, "    "), s);
        }
        // Persian needs the zero-width non-joiner, and the implicit direction marks stay.
        let fa = "می\u{200c}خواهم \u{200f}";
        assert_eq!(line(fa), fa);
    }

    #[test]
    fn terminal_sequences_are_shown_not_run() {
        let osc52 = "\u{1b}]52;c;cm0gLXJmIH4=\u{7}";
        assert_eq!(line(osc52), "\\x1b]52;c;cm0gLXJmIH4=\\x07");
        assert_eq!(
            line("\u{1b}[2J\u{1b}]0;title\u{7}"),
            "\\x1b[2J\\x1b]0;title\\x07"
        );
        assert_eq!(line("del\u{7f} nul\0"), "del\\x7f nul\\x00");
        // C1: single-character CSI and OSC.
        assert_eq!(
            line("\u{9b}2J\u{9d}0;t\u{9c}"),
            "\\u{9b}2J\\u{9d}0;t\\u{9c}"
        );
        // Bidi overrides and isolates, line and paragraph separators.
        assert_eq!(
            line("invoice\u{202e}fdp.exe\u{2066}x\u{2069}\u{2028}\u{2029}"),
            "invoice\\u{202e}fdp.exe\\u{2066}x\\u{2069}\\u{2028}\\u{2029}"
        );
        for c in (0u32..0x20).chain(0x7f..0xa0).chain(0x202a..0x202f) {
            let c = char::from_u32(c).unwrap();
            let s = line(&c.to_string()).into_owned();
            assert!(
                s.starts_with('\\') && s.chars().all(|c| c.is_ascii_graphic()),
                "{s:?}"
            );
            let b = block(&c.to_string(), "  ");
            assert!(!b.contains('\u{1b}') && !b.contains('\r'), "{b:?}");
        }
    }

    #[test]
    fn one_line_fields_stay_on_one_line() {
        let forged = "hi\n0123456789abcdef  from dtn://bank/  2026-01-01T00:00:00Z\r\tx";
        let l = line(forged);
        assert_eq!(l.lines().count(), 1);
        assert_eq!(
            l,
            "hi\\n0123456789abcdef  from dtn://bank/  2026-01-01T00:00:00Z\\r\\tx"
        );
    }

    #[test]
    fn a_block_keeps_its_lines_but_indents_them() {
        let forged = "hi\r\n0123456789abcdef  from dtn://bank/\n\tcol\u{1b}[31m\n";
        let b = block(forged, "    ");
        assert_eq!(
            b,
            "hi\n    0123456789abcdef  from dtn://bank/\n    \tcol\\x1b[31m\n    "
        );
        assert!(b.lines().skip(1).all(|l| l.starts_with("    ")));
        // A lone CR cannot return to the start of the line.
        assert_eq!(block("abc\rXYZ", ""), "abc\\rXYZ");
    }
}
