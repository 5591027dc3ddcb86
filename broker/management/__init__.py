"""The RabbitMQ-compatible management HTTP API (`/api/...` on `--management-port`).

An adapter like the protocol ones: it reads the committed state through the gateway and
changes it with core commands submitted through the gateway, so a declare or a publish is
committed before its reply. Each module serves one group of endpoints through its
`add_routes(app: web.Application, ctx: Context)`; server.ROUTES lists them, and a new group
(policies, the web console's static files at `/`) is one more module and one more line
there. Handlers find the Context at `request.app[CONTEXT_KEY]`, the user at
`auth.user_of(request)`, and raise `errors.ApiError` (or a core BrokerError) to answer with
RabbitMQ's JSON error.
"""
