"""A monitoring bot: push app server + pager + Alertmanager receiver, from one TOML file.

    python example_bot.py examples/monitoring-bot.toml

Phones register with the bot (it is their push app server); Alertmanager posts
to http://127.0.0.1:9095/alertmanager; the bot pages the on-call person's phone
and chat, escalates until someone answers "ack", and greets each new device.
"""

import asyncio
import sys

from slixmpp import ComponentXMPP

from slixmpp_push.config import load_config
from slixmpp_push.notifier.ingest import AlertReceiver
from slixmpp_push.store import create_store


async def main(config_file: str) -> None:
    config = load_config(config_file)
    bot = ComponentXMPP(config.xmpp.jid, config.xmpp.secret, config.xmpp.host, config.xmpp.port)
    store = create_store(config.store, password=config.store_password)  # a file or postgresql://
    bot.register_plugin("push_appserver", {"apps": config.apps, "store": store})
    bot.register_plugin("push_notifier", config.notifier.plugin_config())
    bot.add_event_handler("push_registered", lambda device: bot.send_message(
        mto=device.account, mbody=f"Push is on for your device {device.node}.",
        mfrom=bot.boundjid))
    bot.add_event_handler("page_acked", lambda page: print(f"{page.id} acked by {page.acked_by}",
                                                           flush=True))
    await bot.plugin["push_appserver"].start()  # opens the store; fails fast on bad keys
    await bot.plugin["push_notifier"].start()  # resumes pages left open by a restart
    await AlertReceiver(bot.plugin["push_notifier"], config.ingest).start()
    bot.connect()
    await asyncio.Event().wait()


asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "examples/monitoring-bot.toml"))
