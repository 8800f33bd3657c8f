//! Cursor paging over lists ordered by a string id: `limit` items with ids after `cursor`,
//! and the cursor of the next page when more remain.

/// Default and largest page sizes of the list routes.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

/// One page of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; `None` on the last one.
    pub next_cursor: Option<String>,
}

/// The page of `items` (sorted by `id`, ascending) that starts after `cursor`.
pub fn page<T>(
    items: Vec<T>,
    id: impl Fn(&T) -> &str,
    cursor: Option<&str>,
    limit: usize,
) -> Page<T> {
    let limit = limit.clamp(1, MAX_LIMIT);
    let mut items: Vec<T> = items
        .into_iter()
        .filter(|t| cursor.is_none_or(|c| id(t) > c))
        .collect();
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|t| id(t).to_string())
    } else {
        None
    };
    Page { items, next_cursor }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_each_other_without_gaps_or_repeats() {
        let ids: Vec<String> = (0..25).map(|i| format!("id-{i:03}")).collect();
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let p = page(ids.clone(), |s| s.as_str(), cursor.as_deref(), 10);
            assert!(p.items.len() <= 10);
            seen.extend(p.items);
            match p.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(seen, ids);
        let exact = page(ids[..10].to_vec(), |s| s.as_str(), None, 10);
        assert_eq!((exact.items.len(), exact.next_cursor), (10, None));
    }
}
