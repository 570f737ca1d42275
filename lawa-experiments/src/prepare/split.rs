//! Where a corpus is split into training and validation text, deterministically and
//! independently of how it is read: by document index when there are several documents, by
//! position when there is one.

/// The validation fraction's rule: document `i` (from 0) goes to validation when
/// `floor((i + 1) F) > floor(i F)`, which spreads `round(n F)` validation documents evenly
/// through the corpus whatever its length, deciding each document as it comes.
#[derive(Debug, Clone, Copy)]
pub struct SplitRule {
    /// The validation fraction `F`, in (0, 1).
    pub fraction: f64,
}

impl SplitRule {
    /// Whether document `i` is a validation document.
    pub fn is_val(&self, i: u64) -> bool {
        ((i + 1) as f64 * self.fraction).floor() > (i as f64 * self.fraction).floor()
    }
}

/// Whether byte offset `i` of `text` is a place where every supported pre-tokenizer (GPT-2's
/// regex, the byte-level BPE's, and bytes) has a token boundary anyway: right after a `\n` before
/// a non-space character, or between a non-space character and a space. No pre-token holds a
/// newline beside other characters, nor a non-space character followed by a space.
pub fn is_safe_cut(text: &str, i: usize) -> bool {
    let bytes = text.as_bytes();
    if i == 0 || i >= bytes.len() || !text.is_char_boundary(i) {
        return false;
    }
    let Some(next) = text[i..].chars().next() else {
        return false;
    };
    let Some(prev) = text[..i].chars().next_back() else {
        return false;
    };
    (prev == '\n' && !next.is_whitespace()) || (!prev.is_whitespace() && next == ' ')
}

/// The first [`is_safe_cut`] offset at or after `from`, preferring a line break within 4 KiB.
pub fn safe_cut_at_or_after(text: &str, from: usize) -> Option<usize> {
    let newline = (from..text.len().min(from + 4096))
        .find(|&i| text.as_bytes()[i.max(1) - 1] == b'\n' && is_safe_cut(text, i));
    newline.or_else(|| (from..text.len()).find(|&i| is_safe_cut(text, i)))
}

/// Pieces of about `target` bytes, cut only at [`safe_cut_at_or_after`] boundaries, so that
/// tokenizing the pieces separately gives exactly the tokens of the whole.
pub fn chunks(text: &str, target: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    while text.len() - start > target {
        match safe_cut_at_or_after(text, start + target) {
            Some(cut) => {
                out.push(&text[start..cut]);
                start = cut;
            }
            None => break,
        }
    }
    out.push(&text[start..]);
    out
}

/// Where a single document is cut: at fraction `1 - F` of its text, moved forward to the next
/// safe cut (preferably a line break), so the cut never changes the tokens.
pub fn position_cut(text: &str, val_fraction: f64) -> Option<usize> {
    let target = ((text.len() as f64) * (1.0 - val_fraction)) as usize;
    safe_cut_at_or_after(text, target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_rule_is_even_and_deterministic() {
        let rule = SplitRule { fraction: 0.1 };
        let val: Vec<u64> = (0..20).filter(|&i| rule.is_val(i)).collect();
        assert_eq!(val, [9, 19]);
        let rule = SplitRule { fraction: 0.05 };
        assert!(
            (0..3).all(|i| !rule.is_val(i)),
            "fewer than 1/F documents: none"
        );
    }

    #[test]
    fn single_document_is_cut_after_a_newline() {
        let text = "line one\nline two\nline three\nline four\n";
        let cut = position_cut(text, 0.5).unwrap();
        assert_eq!(&text[..cut], "line one\nline two\nline three\n");
        assert_eq!(&text[cut..], "line four\n");
    }

    #[test]
    fn chunks_rejoin_to_the_text_and_cut_only_after_newlines() {
        let text = "alpha beta\n\n  gamma\ndelta\n".repeat(500);
        let pieces = chunks(&text, 100);
        assert!(pieces.len() > 10);
        assert_eq!(pieces.concat(), text);
        for p in &pieces[1..] {
            assert!(
                !p.starts_with(char::is_whitespace),
                "cut at a line break: {p:?}"
            );
        }
        // One long line: cut between words, the space going with the next piece.
        let line = "word ".repeat(1000);
        let pieces = chunks(&line, 100);
        assert_eq!(pieces.concat(), line);
        assert!(pieces.len() > 10);
        for p in &pieces[1..] {
            assert!(p.starts_with(" w"), "{p:?}");
        }
    }
}
