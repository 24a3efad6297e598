"""`describe`: per-image clinical descriptions from an OpenAI-compatible LLM (paper Sec. 3.4), or a template.

client.py talks to the endpoint through the official `openai` client, store.py keeps descriptions.json
and the answer cache, template.py writes the template descriptions, stage.py is the tracked stage.
"""
from harness.data.records import DataError
from harness.describe.client import ChatClient, redact_url
from harness.describe.errors import DescribeError
from harness.describe.stage import describe
from harness.describe.store import CACHE_FILE, DESCRIPTIONS_FILE, AnswerCache, DescriptionFiles
from harness.describe.template import measure_lesion, normalise_answer, required_prefix, template_description

__all__ = [
    "CACHE_FILE", "DESCRIPTIONS_FILE", "AnswerCache", "ChatClient", "DataError", "DescribeError",
    "DescriptionFiles", "describe", "measure_lesion", "normalise_answer", "redact_url",
    "required_prefix", "template_description",
]
