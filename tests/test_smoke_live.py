def test_live_server_round_trip(live_server):
    r = live_server.post("/telemetry/parse", data="roll:1.5,alt:10", headers={"Content-Type": "text/plain",
                                                                             "X-Device-Id": "d1"})
    assert r.status_code == 200, r.text
    rows = live_server.query("SELECT metric, value FROM telemetry_readings ORDER BY metric")
    assert rows == [("alt", 10.0), ("roll", 1.5)]
