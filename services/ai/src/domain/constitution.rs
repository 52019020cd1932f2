//! Constitutional AI (Bai et al., "Constitutional AI: Harmlessness from AI Feedback", 2022) at
//! request time: the model drafts an answer, then for each principle critiques the current
//! answer against it and revises the answer after the critique. Every call is an ordinary
//! completion (routing, fallbacks, quotas, usage records), so it works on any provider; the
//! response is the last revision, with the trace, and usage and cost that add up every call.

use super::error::{AiError, Result};
use super::model::{
    Caller, ChatRequest, ChatResponse, ConstitutionChoice, ConstitutionStep, Message, Part,
    Principle, ResponseFormat, Role,
};
use super::service::Ai;

/// The constitution every deployment has.
pub const BUILTIN: &str = "helpful-honest-harmless";

/// The built-in principles, after the critique and revision requests of the paper's appendix.
pub fn builtin() -> Vec<Principle> {
    let principle = |name: &str, critique: &str, revision: &str| Principle {
        name: name.to_owned(),
        critique: critique.to_owned(),
        revision: revision.to_owned(),
    };
    vec![
        principle(
            "harmless",
            "Identify specific ways in which the answer is harmful, unethical, racist, sexist, toxic, dangerous, or illegal.",
            "Rewrite the answer to remove all harmful, unethical, racist, sexist, toxic, dangerous, or illegal content.",
        ),
        principle(
            "honest",
            "Identify any claims in the answer that are false, unsupported, or stated with more certainty than is warranted.",
            "Rewrite the answer so that every claim is accurate and its uncertainty is stated plainly.",
        ),
        principle(
            "helpful",
            "Identify ways in which the answer fails to address what the user asked, or is unclear.",
            "Rewrite the answer so that it addresses what the user asked, clearly and concisely.",
        ),
    ]
}

fn turn(role: Role, text: impl Into<String>) -> Message {
    Message {
        role,
        parts: vec![Part::text(text)],
        name: None,
    }
}

fn critique_prompt(principle: &Principle) -> String {
    format!(
        "Critique request: {}\n\nWrite only the critique of your previous answer.",
        principle.critique
    )
}

fn revision_prompt(principle: &Principle) -> String {
    format!(
        "Revision request: {}\n\nWrite only the revised answer, with no preamble.",
        principle.revision
    )
}

impl Ai {
    /// The principles a request names.
    fn principles(&self, choice: &ConstitutionChoice) -> Result<Vec<Principle>> {
        let principles = match choice {
            ConstitutionChoice::Inline(principles) => principles.clone(),
            ConstitutionChoice::Named(name) => match self.constitution(name) {
                Some(principles) => principles.to_vec(),
                None if name == BUILTIN => builtin(),
                None => {
                    return Err(AiError::invalid(
                        "constitution.name",
                        format!(
                            "{name:?} is neither {BUILTIN} nor configured under [ai.constitutions]"
                        ),
                    ));
                }
            },
        };
        if principles.is_empty() {
            return Err(AiError::invalid(
                "constitution",
                "name a constitution or give at least one principle",
            ));
        }
        if let Some(index) = principles
            .iter()
            .position(|p| p.critique.trim().is_empty() || p.revision.trim().is_empty())
        {
            return Err(AiError::invalid(
                format!("constitution.principles[{index}]"),
                "critique and revision must not be empty",
            ));
        }
        Ok(principles)
    }

    /// The draft, then a critique and a revision per principle.
    pub(super) async fn complete_constitutionally(
        &self,
        caller: &Caller,
        request: &ChatRequest,
        choice: &ConstitutionChoice,
    ) -> Result<ChatResponse> {
        let principles = self.principles(choice)?;
        if !request.tools.is_empty() {
            return Err(AiError::invalid(
                "constitution",
                "cannot be combined with tools: a critique revises text, not tool calls",
            ));
        }
        let mut base = request.clone();
        base.constitution = None;
        let mut answer = self.complete(caller, &base).await?;
        let mut usage = answer.usage;
        let mut cost = answer.cost_micros;
        let mut attempts = std::mem::take(&mut answer.attempts);
        let mut notices = std::mem::take(&mut answer.notices);
        let mut trace = Vec::with_capacity(principles.len());
        for principle in &principles {
            let draft = answer.message.text();
            let mut critique_request = base.clone();
            // A critique is prose whatever shape the answer must have.
            critique_request.response_format = ResponseFormat::Text;
            critique_request.messages.extend([
                turn(Role::Assistant, draft.clone()),
                turn(Role::User, critique_prompt(principle)),
            ]);
            let mut critique = self.complete(caller, &critique_request).await?;
            let mut revision_request = base.clone();
            revision_request.messages.extend([
                turn(Role::Assistant, draft),
                turn(Role::User, critique_prompt(principle)),
                turn(Role::Assistant, critique.message.text()),
                turn(Role::User, revision_prompt(principle)),
            ]);
            let mut revision = self.complete(caller, &revision_request).await?;
            for call in [&mut critique, &mut revision] {
                usage += call.usage;
                cost += call.cost_micros;
                attempts.append(&mut call.attempts);
                for notice in call.notices.drain(..) {
                    if !notices.contains(&notice) {
                        notices.push(notice);
                    }
                }
            }
            trace.push(ConstitutionStep {
                principle: principle.name.clone(),
                critique: critique.message.text(),
                revision: revision.message.text(),
            });
            answer = revision;
        }
        Ok(ChatResponse {
            usage,
            cost_micros: cost,
            attempts,
            notices,
            constitution_trace: trace,
            ..answer
        })
    }
}
