package scheduler

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/robfig/cron/v3"
)

// MaxPayloadChars bounds a schedule's payload, in characters (not bytes).
const MaxPayloadChars = 8000

// cronExamples ends every cron error, so that a refusal also says what works.
const cronExamples = `valid examples: "*/5 * * * *" (every 5 minutes), "0 * * * *" (every hour), "30 6 * * 1-5" (06:30 UTC on weekdays), "@daily", "@every 50m"`

var parser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// ParseCron parses a schedule's cron expression under the platform's rules: five
// fields or a descriptor, always UTC, at most once a minute, and firing at some point.
// now is when the check is made (a spec that never fires after now is refused).
func ParseCron(expr string, now time.Time) (cron.Schedule, error) {
	e := strings.TrimSpace(expr)
	fail := func(format string, args ...any) (cron.Schedule, error) {
		return nil, fmt.Errorf("cron %q: %s; %s", expr, fmt.Sprintf(format, args...), cronExamples)
	}
	switch {
	case e == "":
		return fail("empty")
	case strings.HasPrefix(e, "CRON_TZ=") || strings.HasPrefix(e, "TZ="):
		return fail("schedules always run in UTC; remove the time zone prefix and give the time in UTC")
	case strings.HasPrefix(e, "@every"):
		d, err := time.ParseDuration(strings.TrimSpace(strings.TrimPrefix(e, "@every")))
		if err != nil {
			return fail("@every takes a duration, such as @every 5m")
		}
		if d < time.Minute {
			return fail("@every %s fires more often than once a minute; the shortest is @every 1m", d)
		}
	case !strings.HasPrefix(e, "@") && len(strings.Fields(e)) == 6:
		return fail("six fields: a seconds field is not supported; schedules have five fields (minute hour day-of-month month day-of-week)")
	case !strings.HasPrefix(e, "@") && len(strings.Fields(e)) != 5:
		return fail("%d fields; a cron expression has five (minute hour day-of-month month day-of-week)", len(strings.Fields(e)))
	}
	spec, err := parser.Parse(e)
	if err != nil {
		return fail("%v", err)
	}
	if spec.Next(now.UTC()).IsZero() {
		return fail("it never fires (no such date in the next five years)")
	}
	return spec, nil
}

// checkPayload validates a payload: JSON, at most MaxPayloadChars characters.
func checkPayload(payload []byte) error {
	if n := utf8.RuneCount(payload); n > MaxPayloadChars {
		return fmt.Errorf("the payload is %d characters; at most %d", n, MaxPayloadChars)
	}
	if len(payload) > 0 && !json.Valid(payload) {
		return fmt.Errorf("the payload is not valid JSON")
	}
	return nil
}
