//! Limits on a config file's shape, checked before the YAML parser sees it: how large the
//! file is and how deeply it nests. The parser's time grows with the square of the nesting
//! depth (80 KB of `[[[...]]]` held a reload for seconds); no real config nests more than a
//! dozen levels, so a file that does is refused at once with the line where it went too
//! deep.

/// The largest config file read.
pub(super) const MAX_BYTES: usize = 4 * 1024 * 1024;

/// The deepest nesting of mappings and lists, block and flow together.
pub(super) const MAX_DEPTH: usize = 64;

/// Where `text` first nests deeper than [`MAX_DEPTH`]: its 1-based line, or `None`.
///
/// Block nesting is counted by indentation (each deeper indent opens a level, a shallower
/// one closes those above it), flow nesting by `[`/`{` outside quotes and comments. Both
/// are counted as the parser would see them closely enough to catch a file built to be
/// deep; a real config is far from the limit either way.
pub(super) fn too_deep(text: &str) -> Option<usize> {
    let mut indents: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    for (i, line) in text.lines().enumerate() {
        let content = line.trim_start_matches([' ', '-']);
        if flow == 0 && !content.is_empty() && !content.starts_with('#') {
            let indent = line.len() - content.len();
            while indents.last().is_some_and(|top| *top > indent) {
                indents.pop();
            }
            if indents.last().is_none_or(|top| *top < indent) {
                indents.push(indent);
            }
        }
        let mut quote: Option<char> = None;
        for c in content.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '\'' | '"') => quote = Some(c),
                (None, '#') => break,
                (None, '[' | '{') => {
                    flow += 1;
                    if indents.len() + flow > MAX_DEPTH {
                        return Some(i + 1);
                    }
                }
                (None, ']' | '}') => flow = flow.saturating_sub(1),
                _ => {}
            }
        }
        if indents.len() + flow > MAX_DEPTH {
            return Some(i + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_flow_and_block_nesting_are_caught_at_their_line_and_real_configs_pass() {
        let flow = format!("spec:\n  x: {}{}\n", "[".repeat(100), "]".repeat(100));
        assert_eq!(too_deep(&flow), Some(2));
        let mut block = String::from("spec:\n");
        for level in 1..=80 {
            block.push_str(&format!("{}a{level}:\n", "  ".repeat(level)));
        }
        assert_eq!(too_deep(&block), Some(MAX_DEPTH + 1));
        // Brackets inside quotes and comments are text.
        let quoted = format!(
            "a: '{}'\nb: \"{}\" # {}\n",
            "[".repeat(100),
            "{".repeat(100),
            "[".repeat(100)
        );
        assert_eq!(too_deep(&quoted), None);
        let real = include_str!("../tools/demo/demo.yaml");
        assert_eq!(too_deep(real), None);
    }
}
