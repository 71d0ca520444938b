"""Shared state: facts one worker learns that every worker (and the next start) must see."""
