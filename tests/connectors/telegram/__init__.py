"""Tests of the Telegram channel."""
