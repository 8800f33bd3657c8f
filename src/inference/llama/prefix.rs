//! The prompt-prefix KV cache: a slot keeps the KV cells of its last sequence when it
//! finishes, and the next request whose prompt starts with the same tokens reuses them,
//! prefilling only the rest (llama.cpp's `cache_prompt`, vLLM's prefix caching).
//!
//! A slot's cells hold the tokens at positions `0..tokens.len()`: the prompt, then every
//! generated token that was fed back. Admission picks the free slot with the longest common
//! prefix (ties: the least recently used, so other cached prefixes live longer), removes the
//! cells past the common prefix, and starts decoding from there. At least the prompt's last
//! token is always decoded again: its logits give the first generated token.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use llama_cpp_2::token::LlamaToken;

/// What one slot's KV cells hold while no sequence uses it.
#[derive(Debug, Default)]
pub(super) struct SlotCache {
    pub(super) tokens: Vec<LlamaToken>,
    /// When its last sequence finished (`None`: never used, or cleared).
    pub(super) last_used: Option<Instant>,
}

/// Per-model figures for `GET /api/v1/cache` and the metrics.
#[derive(Debug, Default)]
pub struct PrefixStats {
    /// Admissions that reused at least one cached token.
    pub hits: AtomicU64,
    /// Admissions that reused nothing.
    pub misses: AtomicU64,
    /// Prompt tokens not prefilled again, over all hits.
    pub reused_tokens: AtomicU64,
    /// Tokens the free slots hold right now.
    pub cached_tokens: AtomicUsize,
}

impl PrefixStats {
    pub(super) fn admitted(&self, reused: usize) {
        if reused > 0 {
            self.hits.fetch_add(1, Ordering::Relaxed);
            self.reused_tokens
                .fetch_add(reused as u64, Ordering::Relaxed);
        } else {
            self.misses.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Length of the common prefix of `a` and `b`.
pub(super) fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The free slot for `prompt` and how many of its cached tokens can be kept (less than
/// `prompt.len()`, so the last prompt token is decoded again). `free(i)` says whether slot
/// `i` is free.
pub(super) fn choose_slot(
    caches: &[SlotCache],
    free: impl Fn(usize) -> bool,
    prompt: &[LlamaToken],
) -> Option<(usize, usize)> {
    let keep_most = prompt.len().saturating_sub(1);
    (0..caches.len())
        .filter(|&i| free(i))
        .map(|i| (i, common_prefix(&caches[i].tokens, prompt).min(keep_most)))
        // The longest prefix; among equals, the least recently used (never used first).
        .max_by(|(a, pa), (b, pb)| {
            pa.cmp(pb)
                .then_with(|| caches[*b].last_used.cmp(&caches[*a].last_used))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn toks(v: &[i32]) -> Vec<LlamaToken> {
        v.iter().map(|&t| LlamaToken::new(t)).collect()
    }

    fn cache(v: &[i32], age_ms: Option<u64>) -> SlotCache {
        let now = Instant::now() + Duration::from_secs(1);
        SlotCache {
            tokens: toks(v),
            last_used: age_ms.map(|a| now - Duration::from_millis(a)),
        }
    }

    #[test]
    fn the_longest_common_prefix_among_free_slots_wins() {
        let caches = [
            cache(&[1, 2, 3, 4, 5], Some(10)),
            cache(&[1, 2, 9], Some(5)),
            cache(&[1, 2, 3, 4, 5, 6, 7], Some(1)),
        ];
        let prompt = toks(&[1, 2, 3, 4, 5, 6, 8]);
        assert_eq!(choose_slot(&caches, |_| true, &prompt), Some((2, 6)));
        // slot 2 busy: slot 0 keeps 5
        assert_eq!(choose_slot(&caches, |i| i != 2, &prompt), Some((0, 5)));
        assert_eq!(choose_slot(&caches, |_| false, &prompt), None);
    }

    #[test]
    fn the_last_prompt_token_is_always_decoded_again() {
        let caches = [cache(&[1, 2, 3, 4], Some(1))];
        assert_eq!(
            choose_slot(&caches, |_| true, &toks(&[1, 2, 3])),
            Some((0, 2))
        );
        assert_eq!(choose_slot(&caches, |_| true, &toks(&[1])), Some((0, 0)));
    }

    #[test]
    fn without_a_shared_prefix_the_least_recently_used_slot_is_taken() {
        let caches = [
            cache(&[5, 6], Some(1)),
            cache(&[7, 8], Some(50)),
            cache(&[9], Some(20)),
        ];
        assert_eq!(choose_slot(&caches, |_| true, &toks(&[1, 2])), Some((1, 0)));
        let fresh = [cache(&[5, 6], Some(1)), cache(&[], None)];
        assert_eq!(choose_slot(&fresh, |_| true, &toks(&[1, 2])), Some((1, 0)));
    }
}
