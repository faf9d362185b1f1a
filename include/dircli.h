/*
 * dircli.h - the tenant directory's commands (README, "Tenant directory"):
 *
 *   tenant-router directory init -c FILE
 *   tenant-router route -c FILE TENANT...   (with a [directory])
 *   tenant-router move TENANT --to CLUSTER -c FILE [--no-copy] [--delete-source]
 *   tenant-router plan -c FILE [--add-cluster NAME[:W]]... [--remove-cluster NAME]...
 *                      [--weight NAME:W]... [--tenants FILE] [--freeze]
 *
 * Each is a short-lived command run by an operator: blocking libpq, output
 * on stdout, problems on stderr. argv starts after the command's name.
 * Each returns the process exit code (0 ok, 1 failed, 2 usage).
 */
#ifndef TR_DIRCLI_H
#define TR_DIRCLI_H

struct config;

int dircli_directory(int argc, char **argv);
/*
 * `route` with a [directory]: each tenant's line as a router would place it
 * now: "TENANT CLUSTER directory" (an active row), "... moving" or
 * "... blocked", "... invalid" (a row this configuration cannot use),
 * otherwise pinned or ring. 1 if the directory cannot be read.
 */
int dircli_route(const struct config *cfg, char **tenants, int n);
int dircli_move(int argc, char **argv);
int dircli_plan(int argc, char **argv);

#endif /* TR_DIRCLI_H */
