"""Who a user is and what they may do: local accounts, directory sign-in, sessions, roles."""
