"""One ``MqttLink`` shared between threads (docs/security.md, "Threads"):
several threads ``send`` and several ``recv`` at once through a real
Mosquitto on 127.0.0.1; every envelope goes through exactly once."""

from __future__ import annotations

import threading

from moteseal.links.mqtt_link import MqttLink

THREADS = 4
PER_THREAD = 150


def test_one_link_sends_and_receives_from_several_threads(mosquitto, mqtt_client):
    broker = mosquitto(auth=True, accounts={"gw": "gateway", "hub": "device"})
    gw = mqtt_client(broker, user="gw")
    gw.subscribe("moteseal/v1/up/hub")
    link = MqttLink("hub", "127.0.0.1", broker.port, username="hub",
                    password=broker.passwords["hub"]).start()
    try:
        # Down: the gateway publishes, four threads take from the one link.
        down = {b"down-%d" % i for i in range(THREADS * PER_THREAD)}
        for env in down:
            assert gw.publish("moteseal/v1/down/hub", env) == 0
        got: list[list[bytes]] = [[] for _ in range(THREADS)]

        def take(t):
            while (env := link.recv(timeout=3.0)) is not None:
                got[t].append(env)

        # Up: four threads publish on the one link at the same time.
        def send(t):
            for i in range(PER_THREAD):
                link.send(b"up-%d-%d" % (t, i))

        ts = [threading.Thread(target=f, args=(t,), daemon=True)
              for t in range(THREADS) for f in (take, send)]
        for th in ts:
            th.start()
        for th in ts:
            th.join(timeout=60)
        assert not any(th.is_alive() for th in ts)
        received = [e for g in got for e in g]
        assert len(received) == len(down) and set(received) == down  # each once
        up = {p for _, p in gw.collect(THREADS * PER_THREAD, timeout=30)}
        assert up == {b"up-%d-%d" % (t, i) for t in range(THREADS) for i in range(PER_THREAD)}
    finally:
        link.close()
