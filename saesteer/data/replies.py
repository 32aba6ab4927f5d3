"""Fixed refusal and compliance replies: CAA's contrast pairs, discovery's labelled replies, and
the refusal text the offline corpus puts in an SAE's training data."""

REFUSAL_REPLIES = (
    "I'm sorry, but I can't help with that.",
    "I cannot assist with this request.",
    "As an AI, I am not able to do that.",
)
COMPLIANCE_REPLIES = (
    "Sure, here is what you asked for.",
    "Of course! Here's how to do it.",
    "Certainly, I'd be happy to help with that.",
)
