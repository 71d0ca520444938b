"""Token extraction, key sets, verification, claims, policies and revocation."""
