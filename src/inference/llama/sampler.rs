//! How a sequence picks its next token: a greedy argmax over the logits, or a llama.cpp
//! sampler chain.

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use super::super::SamplingParams;

/// llama.cpp's "pick a random seed" value.
const RANDOM_SEED: u32 = u32::MAX;
/// How many recent tokens the repeat penalty looks at (llama.cpp's default).
const PENALTY_LAST_N: i32 = 64;

/// How a sequence picks its next token.
pub(super) enum Sampler {
    /// Temperature 0 without a repeat penalty: the first token with the highest logit, read
    /// straight from the logits. Same choice as llama.cpp's greedy sampler, without copying
    /// the whole vocabulary (262,144 entries for Gemma 3) into a candidate array per token.
    Greedy,
    /// Everything else: a llama.cpp sampler chain.
    Chain(LlamaSampler),
}

impl Sampler {
    pub(super) fn new(model: &LlamaModel, p: &SamplingParams) -> Self {
        let no_penalty = p.repeat_penalty.is_none_or(|r| r == 1.0);
        if p.temperature == 0.0 && no_penalty {
            Sampler::Greedy
        } else {
            Sampler::Chain(build_chain(model, p))
        }
    }

    /// Feeds the prompt into the chain's history (the repeat penalty looks at it).
    pub(super) fn accept_prompt(&mut self, tokens: &[LlamaToken]) {
        if let Sampler::Chain(chain) = self {
            chain.accept_many(tokens);
        }
    }

    /// Picks the token from the logits at `batch_index` (the chain also records it).
    pub(super) fn sample(&mut self, ctx: &LlamaContext, batch_index: i32) -> LlamaToken {
        match self {
            Sampler::Greedy => LlamaToken::new(argmax(ctx.get_logits_ith(batch_index))),
            Sampler::Chain(chain) => chain.sample(ctx, batch_index),
        }
    }
}

/// Index of the first maximum (llama.cpp's greedy sampler keeps the first on ties). Finds
/// the block holding the maximum with eight independent running maxima (four times faster
/// than one compare-and-branch per logit, since this crate builds at opt-level 1), then
/// the first position of that value from the block's start.
fn argmax(logits: &[f32]) -> i32 {
    const BLOCK: usize = 256;
    let mut best = f32::NEG_INFINITY;
    let mut best_block = 0usize;
    for (b, block) in logits.chunks(BLOCK).enumerate() {
        let mut lanes = [f32::NEG_INFINITY; 8];
        let mut eights = block.chunks_exact(8);
        for eight in &mut eights {
            for (lane, &x) in lanes.iter_mut().zip(eight) {
                *lane = lane.max(x);
            }
        }
        let block_max = lanes
            .iter()
            .chain(eights.remainder())
            .fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        if block_max > best {
            best = block_max;
            best_block = b;
        }
    }
    let start = best_block * BLOCK;
    let offset = logits[start..].iter().position(|&x| x == best).unwrap_or(0);
    i32::try_from(start + offset).unwrap_or(i32::MAX)
}

fn build_chain(model: &LlamaModel, p: &SamplingParams) -> LlamaSampler {
    let mut chain = Vec::new();
    if let Some(penalty) = p.repeat_penalty {
        chain.push(LlamaSampler::penalties(
            model.n_vocab(),
            PENALTY_LAST_N,
            penalty,
            0.0,
            0.0,
        ));
    }
    if p.temperature == 0.0 {
        chain.push(LlamaSampler::greedy());
    } else {
        if let Some(k) = p.top_k {
            chain.push(LlamaSampler::top_k(k));
        }
        if let Some(top_p) = p.top_p {
            chain.push(LlamaSampler::top_p(top_p, 1));
        }
        if let Some(min_p) = p.min_p {
            chain.push(LlamaSampler::min_p(min_p, 1));
        }
        chain.push(LlamaSampler::temp(p.temperature));
        chain.push(LlamaSampler::dist(p.seed.unwrap_or(RANDOM_SEED)));
    }
    LlamaSampler::chain_simple(chain)
}

#[cfg(test)]
mod tests {
    use super::argmax;

    #[test]
    fn argmax_takes_the_first_of_equal_maxima() {
        assert_eq!(argmax(&[0.5, 2.0, -1.0, 2.0]), 1);
        assert_eq!(argmax(&[-3.0, -2.0, -7.0]), 1);
        assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NEG_INFINITY, 0.0]), 2);
        assert_eq!(argmax(&[f32::NAN, 1.0, f32::NAN]), 1);
    }

    /// Against the one-compare-per-logit definition, across block and lane boundaries.
    #[test]
    fn argmax_agrees_with_a_linear_scan() {
        let linear = |v: &[f32]| {
            let mut best = 0;
            for (i, &x) in v.iter().enumerate() {
                if x > v[best] {
                    best = i;
                }
            }
            best as i32
        };
        for len in [1usize, 7, 8, 9, 255, 256, 257, 1000, 262_144] {
            let mut v: Vec<f32> = (0..len).map(|i| ((i * 7919) % 1009) as f32).collect();
            assert_eq!(argmax(&v), linear(&v), "len {len}");
            // a tie later in the vector: the first one wins
            if len > 600 {
                v[300] = 5000.0;
                v[len - 1] = 5000.0;
                assert_eq!(argmax(&v), 300, "len {len}");
            }
        }
    }
}
