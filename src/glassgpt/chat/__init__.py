"""Conversations: the format, rendering to ids and a loss mask, and views of them."""
