"""Structured extraction into a Pydantic model.

Serve it with: dspy-serve run examples/extract.py:program --artifact examples/extract.json
"""

import dspy
from pydantic import BaseModel, Field


class Contact(BaseModel):
    name: str = Field(description="the person's full name")
    email: str | None = Field(default=None, description="their email address, if the text gives one")
    company: str | None = Field(default=None, description="the company they work for, if the text says")


class ExtractContact(dspy.Signature):
    """Extract the contact details of the person in the text.
    Copy each value exactly as it is written; use null for anything the text does not say."""

    text: str = dspy.InputField(desc="free text about one person, e.g. an email signature or a note")
    contact: Contact = dspy.OutputField()


program = dspy.Predict(ExtractContact)
