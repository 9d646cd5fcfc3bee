package main

import (
	"github.com/heraldhq/herald/internal/config"
	"github.com/heraldhq/herald/internal/waypoint"
)

func runWaypoint(args []string) int {
	return runService(service[config.Waypoint]{
		name: "waypoint",
		about: `Usage: herald waypoint [flags]

Serves "wait for one event" Server-Sent Events streams fed by NATS JetStream, as acapy-cloud's
waypoint does, with one consumer for the whole process instead of one per request:

  GET /v1/sse/{wallet_id}/{topic}/{field}/{field_id}/{desired_state}[?look_back=N][&group_id=G]
      answers the first event of that wallet, topic and payload.state whose payload[field] is
      field_id, as "data: {...}" then closes; events up to look_back seconds old count (default
      SSE_LOOK_BACK); nothing by SSE_TIMEOUT: closes with no data. ": ping - <UTC>" comments
      keep the stream alive meanwhile.
  GET /health/live, /health/ready (503 while the stream cannot be read), /metrics

x-api-key: governance.<key>, tenant-admin.<key>, or tenant.<HS256 JWT with wallet_id>; a tenant
watches only its own wallet. Missing: 403; unknown role: 401; wrong key or token: 403.
`,
		vars: config.WaypointVars,
		load: config.LoadWaypoint,
		log:  func(c config.Waypoint) (string, string) { return c.LogFormat, c.LogLevel },
		run:  waypoint.Run,
	}, args)
}
