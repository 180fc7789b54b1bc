/* Why a rank ignores one late signal: under mpirun the ranks get their
 * SIGTERM one after another, and a rank that was told to stop by another
 * rank (the per-batch decision) may return from its run before its own
 * signal arrives. With the default action back in place, that signal killed
 * it while it saved or waited at the exit handshake, and the other ranks
 * then waited there for it until mpirun's SIGKILL: no exit status, and on
 * the master no checkpoint if it was still writing (seen as
 * test_mpi_sigint failing on a loaded machine: rank 1 exited 143, rank 0 was
 * killed). A rank that is stopping anyway takes the signal as already
 * answered; a user who insists (a second Ctrl-C to mpirun) still ends it. */
#include "cli/late_signals.h"

#include <signal.h>
#include <string.h>

static volatile sig_atomic_t ignored;

static void on_late(int sig) {
  if (ignored) {
    signal(sig, SIG_DFL);
    raise(sig);
    return;
  }
  ignored = 1;
}

void loom_cli_hold_late_signals(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_late;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
}

int loom_cli_late_signals(void) { return ignored; }
