"""Telegram Bot API channel: webhook or long polling, several bots at once.

``parse`` is pure (no PTB import, so ``omnigate parse telegram`` starts fast);
``client`` holds the I/O through python-telegram-bot.
"""
