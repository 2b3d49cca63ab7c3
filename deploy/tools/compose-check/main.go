// compose-check loads compose files with the Compose-spec reference loader (compose-go v2, the
// loader `docker compose` itself uses) and prints the resolved, normalized project as JSON, or
// exits with status 1 and the loader's error. It lets the tests check the compose files on a
// machine without a Docker engine (tests/unit/test_compose_secure.py).
//
//	go build -o compose-check . && ./compose-check [flags] FILE...
//
//	-project-dir DIR  project directory: relative paths in every file resolve against it
//	                  (default: the directory of the first file, as `docker compose -f` does)
//	-e KEY=VALUE      an interpolation variable (repeatable); the process environment and any
//	                  .env file are NOT read unless -os-env is given, so the output depends only
//	                  on the flags
//	-os-env           also use the process environment (the -e values take precedence)
//	-profile NAME     activate a profile (repeatable; default "*": every service)
//	-name NAME        project name (default: the files' `name:`)
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
)

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

func main() {
	var env, profiles multi
	projectDir := flag.String("project-dir", "", "project directory (default: the first file's directory)")
	osEnv := flag.Bool("os-env", false, "also read the process environment")
	name := flag.String("name", "", "project name")
	flag.Var(&env, "e", "KEY=VALUE interpolation variable (repeatable)")
	flag.Var(&profiles, "profile", `profile to activate (repeatable; default "*")`)
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: %s [flags] FILE...\n", filepath.Base(os.Args[0]))
		flag.PrintDefaults()
	}
	flag.Parse()
	files := flag.Args()
	if len(files) == 0 {
		flag.Usage()
		os.Exit(2)
	}
	for _, kv := range env {
		if !strings.Contains(kv, "=") {
			fmt.Fprintf(os.Stderr, "compose-check: -e %q: want KEY=VALUE\n", kv)
			os.Exit(2)
		}
	}
	if len(profiles) == 0 {
		profiles = multi{"*"}
	}
	dir := *projectDir
	if dir == "" {
		dir = filepath.Dir(files[0])
	}

	opts := []cli.ProjectOptionsFn{
		cli.WithWorkingDirectory(dir),
		cli.WithProfiles(profiles),
		cli.WithInterpolation(true),
		cli.WithNormalization(true),
		cli.WithConsistency(true),
		cli.WithResolvedPaths(true),
	}
	if *osEnv {
		opts = append(opts, cli.WithOsEnv)
	}
	opts = append(opts, cli.WithEnv(env)) // after WithOsEnv: the flags win
	if *name != "" {
		opts = append(opts, cli.WithName(*name))
	}

	options, err := cli.NewProjectOptions(files, opts...)
	if err != nil {
		fail(err)
	}
	project, err := options.LoadProject(context.Background())
	if err != nil {
		fail(err)
	}
	out, err := project.MarshalJSON()
	if err != nil {
		fail(err)
	}
	os.Stdout.Write(append(out, '\n'))
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "compose-check: %v\n", err)
	os.Exit(1)
}
