"""The hub: OpenAI chat, the one form every dialect and provider translates to and from,
and the server-sent-event framing they share."""
