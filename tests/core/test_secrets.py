from __future__ import annotations

from circuitlab.core.secrets import MASK, redact


def test_redact_masks_given_secrets_and_credentials_in_common_spellings():
    text = ('{"Authorization": "Bearer sk-abc123", "x-api-key": "k-999"} '
            "https://user:hunter2@host/v1?api_key=q123 and the key sk-abc123 again")  # fmt: skip
    masked = redact(text, ["sk-abc123"])
    for secret in ("sk-abc123", "k-999", "hunter2", "q123"):
        assert secret not in masked
    assert masked.count(MASK) >= 5 and "https://" in masked and "host/v1" in masked
    assert redact("nothing to hide here") == "nothing to hide here"
