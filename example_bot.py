"""A slixmpp bot that is also a push app server.

    PUSH_JID=push.example.org PUSH_SECRET_FILE=component.secret python example_bot.py

It connects as an XEP-0114 component (PUSH_HOST, PUSH_PORT: default
127.0.0.1:5347), serves phones registering with the provider id
``tigase:messenger:apns:1`` through the console provider (swap in
``type="apns"`` and your key for real pushes), and greets each new device.
"""

import asyncio
import os
from pathlib import Path

from slixmpp import ComponentXMPP

import slixmpp_push  # registers push_appserver with slixmpp

secret = Path(os.environ["PUSH_SECRET_FILE"]).read_text().strip()
bot = ComponentXMPP(os.environ["PUSH_JID"], secret, os.environ.get("PUSH_HOST", "127.0.0.1"),
                    int(os.environ.get("PUSH_PORT", "5347")))
bot.register_plugin("push_appserver", {
    "apps": [slixmpp_push.AppConfig(id="tigase:messenger:apns:1", type="console")],
    "store": os.environ.get("PUSH_STORE", "push-store.json"),
})
bot.add_event_handler("push_registered", lambda device: bot.send_message(
    mto=device.account, mbody=f"Push is on for your device {device.node}.", mfrom=bot.boundjid))
bot.connect()
asyncio.get_event_loop().run_forever()
