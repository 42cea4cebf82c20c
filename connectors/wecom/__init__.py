"""WeCom (企业微信) channel: app callbacks and 微信客服 (WeChat customer service).

App callbacks arrive as AES envelopes like an Official Account's (shared
helpers in ``connectors.wechat``); 微信客服 only notifies (``kf_msg_or_event``)
and the messages are pulled with ``kf/sync_msg``, each journaled on its own.
"""
