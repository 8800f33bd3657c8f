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

/// Shortest common prefix worth keeping: shorter ones (every prompt shares its BOS token)
/// are prefilled again, so that a hit means a real shared prefix (vLLM caches whole blocks
/// of 16 tokens for the same reason).
pub(super) const MIN_REUSE: usize = 16;

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
        .map(|i| {
            let shared = common_prefix(&caches[i].tokens, prompt).min(keep_most);
            (i, if shared < MIN_REUSE { 0 } else { shared })
        })
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

    /// `MIN_REUSE` shared tokens, then `tail`.
    fn with_prefix(tail: &[i32]) -> Vec<i32> {
        (100..100 + MIN_REUSE as i32)
            .chain(tail.iter().copied())
            .collect()
    }

    #[test]
    fn the_longest_common_prefix_among_free_slots_wins() {
        let caches = [
            cache(&with_prefix(&[1, 2, 3, 4, 5]), Some(10)),
            cache(&with_prefix(&[1, 2, 9]), Some(5)),
            cache(&with_prefix(&[1, 2, 3, 4, 5, 6, 7]), Some(1)),
        ];
        let prompt = toks(&with_prefix(&[1, 2, 3, 4, 5, 6, 8]));
        let n = MIN_REUSE;
        assert_eq!(choose_slot(&caches, |_| true, &prompt), Some((2, n + 6)));
        // slot 2 busy: slot 0 keeps 5 more
        assert_eq!(choose_slot(&caches, |i| i != 2, &prompt), Some((0, n + 5)));
        assert_eq!(choose_slot(&caches, |_| false, &prompt), None);
    }

    #[test]
    fn the_last_prompt_token_is_always_decoded_again() {
        let caches = [cache(&with_prefix(&[1, 2, 3, 4]), Some(1))];
        let prompt = toks(&with_prefix(&[1, 2, 3]));
        let n = MIN_REUSE;
        assert_eq!(choose_slot(&caches, |_| true, &prompt), Some((0, n + 2)));
    }

    #[test]
    fn a_prefix_shorter_than_min_reuse_is_prefilled_again() {
        let caches = [cache(&[1, 2, 3, 4, 5, 6], Some(1))];
        let prompt = toks(&[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(choose_slot(&caches, |_| true, &prompt), Some((0, 0)));
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
