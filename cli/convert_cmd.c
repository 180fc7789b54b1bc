/* loom convert idx: IDX files to HDF5. */
#include "cli/cli_common.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CONVERT_LINE "loom convert idx OUT.h5 --images FILE --labels FILE"
static const char usage_convert[] =
    "usage: " CONVERT_LINE "\n"
    "\n"
    "Writes IDX images and labels (gzip'd or not) as the HDF5 datasets \"images\"\n"
    "and \"labels\" of OUT.h5, creating its directory; idx is the only format.\n";

/* loom convert idx OUT.h5 --images FILE --labels FILE */
int loom_cli_convert(int argc, char **argv) {
  static const struct option options[] = {{"images", required_argument, NULL, 'i'},
                                          {"labels", required_argument, NULL, 'l'},
                                          {"help", no_argument, NULL, 'h'},
                                          {NULL, 0, NULL, 0}};
  const char *images = NULL, *labels = NULL;
  optind = 1;
  for (int c; (c = getopt_long(argc, argv, "i:l:h", options, NULL)) != -1;) {
    if (c == 'i') {
      images = optarg;
    } else if (c == 'l') {
      labels = optarg;
    } else if (c == 'h') {
      fputs(usage_convert, stdout);
      return EXIT_DONE;
    } else {
      return EXIT_USAGE; /* getopt said which option */
    }
  }
  char problem[300] = "";
  if (optind == argc)
    snprintf(problem, sizeof problem, "expected a format and OUT.h5 (" CONVERT_LINE ")");
  else if (strcmp(argv[optind], "idx") != 0)
    snprintf(problem, sizeof problem, "no converter for \"%.100s\"; loom converts idx files (" CONVERT_LINE ")",
             argv[optind]);
  else if (optind != argc - 2)
    snprintf(problem, sizeof problem, "expected one OUT.h5 after idx (" CONVERT_LINE ")");
  else if (!images || !labels)
    snprintf(problem, sizeof problem, "--images FILE and --labels FILE are both required");
  if (*problem) {
    fprintf(stderr, "loom: convert: %s\n", problem);
    return EXIT_USAGE;
  }
  if (loom_idx_to_hdf5(images, labels, argv[optind + 1]) < 0) {
    fprintf(stderr, "loom: error: %s\n", loom_last_error());
    return loom_last_error_code() == LOOM_EIO ? EXIT_RUNTIME : EXIT_USAGE;
  }
  printf("wrote %s\n", argv[optind + 1]);
  return EXIT_DONE;
}
