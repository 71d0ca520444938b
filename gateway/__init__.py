"""clerk-gateway: verifies Clerk and OIDC session tokens in front of existing APIs."""

__version__ = "0.1.0"
