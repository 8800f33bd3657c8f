//! Request validators for the fuzz targets ([`crate::fuzzing`]): a body goes through
//! exactly what a route does before the runner sees it (strict parsing, the type-confusion
//! check, poem-openapi's typed parse, the conversion to [`InferenceInput`]) and then the
//! sampling rules. Every step may refuse; none may panic.

use super::inference::{to_input, InferenceRequest};
use super::openai::types::ChatCompletionRequest;
use super::payload::parse_body;
use crate::inference::runner::InferenceInput;
use crate::inference::SamplingParams;

fn sampling(input: InferenceInput) {
    let params = input.sampling.apply(SamplingParams::default());
    if params.validate().is_ok() {
        // Accepted parameters are within the documented ranges.
        assert!(params.max_tokens >= 1, "max_tokens {}", params.max_tokens);
        assert!(params.temperature.is_finite() && params.temperature >= 0.0);
    }
}

/// A `POST /api/v1/inference` (and `/api/v1/jobs`) body.
pub fn inference_request(data: &[u8]) {
    if let Ok(req) = parse_body::<InferenceRequest>(data) {
        if let Ok(input) = to_input(req) {
            sampling(input);
        }
    }
}

/// A `POST /v1/chat/completions` body.
pub fn chat_request(data: &[u8]) {
    if let Ok(req) = parse_body::<ChatCompletionRequest>(data) {
        if let Ok(input) = req.input() {
            sampling(input);
        }
    }
}
