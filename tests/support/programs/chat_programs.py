"""Programs the OpenAI-compatible tests serve: a chat with history, one that reasons, and
shapes a chat message cannot fill."""

from __future__ import annotations

import dspy


class Chat(dspy.Signature):
    """Reply to the user, taking the conversation so far into account."""

    question: str = dspy.InputField()
    history: dspy.History = dspy.InputField()
    answer: str = dspy.OutputField()


chat = dspy.Predict(Chat)

# Outputs reasoning, then answer: only answer is the reply.
thinker = dspy.ChainOfThought("question -> answer")

# Two required str inputs: which one takes the message is ambiguous.
ambiguous = dspy.Predict("context, question -> answer")


class Tagged(dspy.Signature):
    """Needs a list a chat message cannot supply."""

    question: str = dspy.InputField()
    tags: list[str] = dspy.InputField()
    answer: str = dspy.OutputField()


tagged = dspy.Predict(Tagged)


# Two str outputs: the reply is the last one unless the operator picks another (--chat-reply).
triage = dspy.Predict("question -> topic, reply")
