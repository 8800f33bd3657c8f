//! Prompt tokenization: raw text, and chat messages rendered with the model's template so
//! that only the template's own markers become control tokens (see `chat.rs`).

use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token_type::LlamaTokenAttr;

use super::super::chat::{is_c_space, Markers, Piece};
use super::super::{ChatMessage, EngineError, Prompt};
use super::{fallback_template, Batcher};

/// Plain text between two control tokens of a chat prompt, tokenized as one string with
/// special-token parsing off.
#[derive(Default)]
struct PlainRun {
    text: String,
    /// The last control token strips the whitespace after it (llama.cpp's rstrip).
    strip_next: bool,
}

impl PlainRun {
    fn push(&mut self, mut text: &str) {
        if self.strip_next {
            text = text.trim_start_matches(is_c_space);
            self.strip_next = text.is_empty();
        }
        self.text.push_str(text);
    }

    /// The next control token strips the whitespace before it (llama.cpp's lstrip).
    fn trim_end(&mut self) {
        let kept = self.text.trim_end_matches(is_c_space).len();
        self.text.truncate(kept);
    }

    fn flush(&mut self, model: &LlamaModel, tokens: &mut Vec<LlamaToken>) {
        if !self.text.is_empty() {
            tokens.extend(model.vocab().tokenize(self.text.as_bytes(), false, false));
            self.text.clear();
        }
    }
}

impl Batcher<'_, '_> {
    pub(super) fn tokenize(&self, prompt: &Prompt) -> Result<Vec<LlamaToken>, EngineError> {
        let tokens = match prompt {
            Prompt::Text(text) => self.model.vocab().tokenize(text.as_bytes(), true, false),
            Prompt::Chat(messages) => self.tokenize_chat(messages)?,
        };
        if tokens.is_empty() {
            return Err(EngineError::InvalidParams("prompt is empty".into()));
        }
        Ok(tokens)
    }

    /// Renders the chat template and tokenizes it with control tokens parsed in the
    /// template's own text only: message content is plain text, so a message holding
    /// `<end_of_turn>` cannot end its turn (see `chat.rs`).
    ///
    /// Tokens are the same as tokenizing the whole rendered text with special-token parsing
    /// on, as long as the content holds no control-token text: each run of plain text between
    /// two control tokens (template text and content together) is tokenized as one string,
    /// as llama.cpp does with the fragments it cuts at control tokens.
    fn tokenize_chat(&self, messages: &[ChatMessage]) -> Result<Vec<LlamaToken>, EngineError> {
        if messages.iter().any(|m| m.content.contains('\0')) {
            return Err(EngineError::InvalidParams(
                "message contains a NUL byte".into(),
            ));
        }
        let markers = Markers::new();
        // llama.cpp recognises only some template sources; an unrecognised one gets the
        // family's built-in template instead.
        let fallback;
        let mut template = &self.template;
        let bare = match self.render_chat(template, messages, |i| markers.bare(i)) {
            Ok(text) => text,
            Err(_) => {
                fallback = fallback_template(self.model);
                template = &fallback;
                self.render_chat(template, messages, |i| markers.bare(i))?
            }
        };
        let padded = self.render_chat(template, messages, |i| markers.padded(i))?;
        let contents: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
        let pieces = markers
            .split(&bare, &padded, &contents)
            .or_else(|| {
                let model = &self.worker.model_id;
                tracing::debug!(%model, "chat template trims unpredictably: content kept as sent");
                markers.split_untrimmed(&bare, &contents)
            })
            .ok_or_else(|| EngineError::Internal("chat template mangled a placeholder".into()))?;

        let vocab = self.model.vocab();
        let mut tokens = Vec::new();
        // As `tokenize(.., add_special = true, ..)` does.
        if vocab.should_add_bos() {
            tokens.push(vocab.bos());
        }
        let mut run = PlainRun::default();
        for piece in pieces {
            match piece {
                Piece::Content(text) => run.push(text),
                Piece::Template(text) => self.push_template(text, &mut run, &mut tokens),
            }
        }
        run.flush(self.model, &mut tokens);
        if vocab.should_add_eos() {
            tokens.push(vocab.eos());
        }
        Ok(tokens)
    }

    /// Cuts template text at the control tokens llama.cpp finds in it: the text between
    /// them joins the current plain-text run, each control token ends the run.
    fn push_template(&self, text: &str, run: &mut PlainRun, tokens: &mut Vec<LlamaToken>) {
        let vocab = self.model.vocab();
        let mut rest = text;
        for token in vocab.tokenize(text.as_bytes(), false, true) {
            let attr = vocab.attr(token);
            if !attr.intersects(LlamaTokenAttr::Control | LlamaTokenAttr::Unknown) {
                continue;
            }
            let marker = vocab.text(token).and_then(|t| t.to_str().ok());
            let Some((at, len)) = marker.and_then(|m| Some((rest.find(m)?, m.len()))) else {
                // Not found as text (never seen): the template text is ours, so tokenizing
                // the rest of it on its own is safe, if not exactly the joined tokenization.
                run.flush(self.model, tokens);
                tokens.extend(vocab.tokenize(rest.as_bytes(), false, true));
                return;
            };
            run.push(&rest[..at]);
            if attr.contains(LlamaTokenAttr::LStrip) {
                run.trim_end();
            }
            run.flush(self.model, tokens);
            tokens.push(token);
            run.strip_next = attr.contains(LlamaTokenAttr::RStrip);
            rest = &rest[at + len..];
        }
        run.push(rest);
    }

    /// The chat rendered by `template`, with `content(i)` as message `i`'s content.
    fn render_chat(
        &self,
        template: &LlamaChatTemplate,
        messages: &[ChatMessage],
        content: impl Fn(usize) -> String,
    ) -> Result<String, EngineError> {
        let chat = messages
            .iter()
            .enumerate()
            .map(|(i, m)| LlamaChatMessage::new(m.role.as_str().to_owned(), content(i)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| EngineError::Internal("chat placeholder contains a NUL byte".into()))?;
        self.model
            .apply_chat_template(template, &chat, true)
            .map_err(|e| EngineError::Internal(format!("chat template: {e}")))
    }
}
