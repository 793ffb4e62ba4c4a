"""Access control: who is calling (API keys from a key file, hospital sign-on tokens) and what they may do
(scopes). ``app.security`` turns it into FastAPI dependencies."""
