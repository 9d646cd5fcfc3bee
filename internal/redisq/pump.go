package redisq

import (
	"context"
	"strconv"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/redis/rueidis"
)

// pumpLoop moves due retries back to the queue. A member goes retry set -> staging (one script,
// same slot) -> queue -> out of staging; a crash at any point leaves it in the set or in staging,
// where a live pump claims it once this instance's lease expires.
func (q *Queue) pumpLoop(ctx context.Context) {
	var backoff time.Duration
	for ctx.Err() == nil {
		moved, err := q.pumpOnce(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			backoff = min(max(2*backoff, 100*time.Millisecond), 5*time.Second)
			q.o.Log.Warn("retry pump failed; backing off", "err", err, "retry_in", backoff)
			engine.Sleep(ctx, backoff)
			continue
		}
		backoff = 0
		if moved < q.o.PumpBatch {
			// Scores are whole seconds, so polling faster than this finds nothing new.
			engine.Sleep(ctx, time.Second)
		}
	}
}

// pumpOnce claims the staging lists of dead pumps, stages due members and pushes staging to the
// queue. It returns how many members it staged.
func (q *Queue) pumpOnce(ctx context.Context) (int, error) {
	if err := q.claimDeadStaging(ctx); err != nil {
		return 0, err
	}
	now := time.Now()
	n, err := stageScript.Exec(ctx, q.c,
		[]string{q.o.Keys.RetrySet, q.staging, q.o.Keys.pumpLeases},
		[]string{strconv.FormatInt(now.Unix(), 10), strconv.Itoa(q.o.PumpBatch), q.o.Instance,
			strconv.FormatInt(now.Add(q.o.Lease).UnixMilli(), 10)}).AsInt64()
	if err != nil {
		return 0, err
	}
	if err := q.flushStaging(ctx); err != nil {
		return 0, err
	}
	return int(n), nil
}

// flushStaging pushes this instance's staging list onto the queue and then trims exactly what it
// pushed. Only this instance's pump goroutine (or Close, after it) touches its staging list.
func (q *Queue) flushStaging(ctx context.Context) error {
	items, err := q.c.Do(ctx, q.c.B().Lrange().Key(q.staging).Start(0).Stop(-1).Build()).AsStrSlice()
	if err != nil || len(items) == 0 {
		return err
	}
	if err := q.c.Do(ctx, q.c.B().Rpush().Key(q.o.Keys.Queue).Element(items...).Build()).Error(); err != nil {
		return err
	}
	return q.c.Do(ctx, q.c.B().Ltrim().Key(q.staging).Start(int64(len(items))).Stop(-1).Build()).Error()
}

func (q *Queue) claimDeadStaging(ctx context.Context) error {
	now := strconv.FormatInt(time.Now().UnixMilli(), 10)
	dead, err := q.c.Do(ctx, q.c.B().Zrangebyscore().Key(q.o.Keys.pumpLeases).Min("-inf").Max(now).Build()).AsStrSlice()
	if err != nil {
		return err
	}
	for _, id := range dead {
		if id == q.o.Instance {
			continue
		}
		if err := claimScript.Exec(ctx, q.c,
			[]string{q.o.Keys.Staging(id), q.staging, q.o.Keys.pumpLeases},
			[]string{id, now}).Error(); err != nil && !rueidis.IsRedisNil(err) {
			return err
		}
	}
	return nil
}
