"""The AgentKavach backend: a Litestar app on Piccolo ORM.

``backend.app.create_app`` builds the app; ``backend.cli`` holds the set-up
commands (serve, migrate, create a user, create a key).
"""
