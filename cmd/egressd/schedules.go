package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/egressd/egressd/scheduler"
)

const schedulesUsage = `Usage: egressd schedules COMMAND [flags]

Commands:
  list [--json] [--deleted]                        every schedule with its state; --deleted: those
                                                   deleted with their function, which restore brings back
  create --function F --cron EXPR [--payload JSON|@file]
                                                   invoke F on EXPR (UTC, five fields or @hourly/@every 5m/...)
  delete ID                                        delete a schedule
  run ID                                           invoke now, outside the schedule
  restore ID                                       recreate a schedule deleted with its function

They talk to the running egressd's admin API: --admin URL, --token-file FILE or EGRESSD_ADMIN_TOKEN.
`

func runSchedules(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	g, args, code, ok := splitGroup("schedules", schedulesUsage, args, stderr)
	if !ok {
		return code
	}
	cmd := g.cmd
	fs := g.flagSet()
	af := addAdminFlags(fs)
	function := fs.String("function", "", "create: the function to invoke")
	cronExpr := fs.String("cron", "", "create: when, in UTC")
	payload := fs.String("payload", "{}", "create: the JSON payload, or @file to read it from a file")
	asJSON := fs.Bool("json", false, "list: print JSON")
	deleted := fs.Bool("deleted", false, "list: the schedules deleted with their function")
	pos, code, ok := parseFlags(fs, args)
	if !ok {
		return code
	}
	usage, fail := g.usage, g.fail
	if code, ok := g.checkArgs(pos, map[string]int{"list": 0, "create": 0, "delete": 1, "run": 1, "restore": 1}); !ok {
		return code
	}
	c, err := af.client()
	if err != nil {
		return usage(err.Error())
	}
	switch cmd {
	case "list":
		if *deleted {
			var resp struct {
				Deleted []scheduler.DeletedSchedule `json:"deleted"`
			}
			if err := c.get(ctx, "/v1/schedules/deleted", &resp); err != nil {
				return fail(err)
			}
			if *asJSON {
				printJSON(stdout, resp)
				return exitOK
			}
			printDeleted(stdout, resp.Deleted)
			return exitOK
		}
		var resp struct {
			Schedules []scheduler.Schedule `json:"schedules"`
		}
		if err := c.get(ctx, "/v1/schedules", &resp); err != nil {
			return fail(err)
		}
		if *asJSON {
			printJSON(stdout, resp)
			return exitOK
		}
		printSchedules(stdout, resp.Schedules, time.Local)
	case "create":
		if *function == "" || *cronExpr == "" {
			return usage("give --function and --cron")
		}
		text := *payload
		if file, ok := strings.CutPrefix(text, "@"); ok {
			data, err := os.ReadFile(file)
			if err != nil {
				return fail(err)
			}
			text = string(data)
		}
		body, _ := json.Marshal(map[string]string{"function": *function, "cron": *cronExpr, "payload": text})
		var sc scheduler.Schedule
		if err := c.do(ctx, "POST", "/v1/schedules", bytes.NewReader(body), &sc); err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "created %s: %s on %q, next run %s\n", sc.ID, sc.Function, sc.Cron, bothZones(sc.State.NextRun, time.Local))
	case "delete":
		if err := c.do(ctx, "DELETE", "/v1/schedules/"+pos[0], nil, nil); err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "deleted %s\n", pos[0])
	case "restore":
		var sc scheduler.Schedule
		if err := c.do(ctx, "POST", "/v1/schedules/"+pos[0]+"/restore", nil, &sc); err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "restored %s: %s on %q, next run %s\n", sc.ID, sc.Function, sc.Cron, bothZones(sc.State.NextRun, time.Local))
	case "run":
		var sc scheduler.Schedule
		if err := c.do(ctx, "POST", "/v1/schedules/"+pos[0]+"/run", nil, &sc); err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "ran %s: %s\n", sc.ID, lastState(sc.State))
		if sc.State.LastOutcome != "success" {
			return exitFail
		}
	}
	return exitOK
}

func printSchedules(w io.Writer, list []scheduler.Schedule, local *time.Location) {
	if len(list) == 0 {
		fmt.Fprintln(w, "no schedules")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tFUNCTION\tCRON\tNEXT\tLAST\tLAST STATE")
	for _, s := range list {
		last := "never"
		if s.State.LastRun != nil {
			last = bothZones(*s.State.LastRun, local)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", s.ID, s.Function, s.Cron, bothZones(s.State.NextRun, local), last, lastState(s.State))
	}
	tw.Flush()
}

func printDeleted(w io.Writer, list []scheduler.DeletedSchedule) {
	if len(list) == 0 {
		fmt.Fprintln(w, "no deleted schedules")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tFUNCTION\tCRON\tDELETED\tWHY\tPAYLOAD")
	for _, d := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", d.ID, d.Function, d.Cron, bothZones(d.DeletedAt, time.Local), d.Reason, d.Payload)
	}
	tw.Flush()
}

// bothZones shows a time in UTC, which schedules use, and in the local zone.
func bothZones(t time.Time, local *time.Location) string {
	if t.IsZero() {
		return "-"
	}
	u := t.UTC().Format("2006-01-02 15:04 UTC")
	if local == nil || local == time.UTC || t.In(local).Format("-0700") == "+0000" {
		return u
	}
	return u + " (" + t.In(local).Format("15:04 MST") + ")"
}

func lastState(s scheduler.State) string {
	switch {
	case s.LastOutcome == "":
		return "-"
	case s.LastOutcome == "success":
		return fmt.Sprintf("success (%d, %.2fs)", s.LastStatus, s.LastDuration)
	}
	return fmt.Sprintf("failure: %s", s.LastError)
}
