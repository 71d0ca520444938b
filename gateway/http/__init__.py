"""HTTP adapters: forward-auth, proxy, webhooks, admin, and the one place errors become HTTP."""
