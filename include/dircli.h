/*
 * dircli.h - the tenant directory's commands (README, "Tenant directory"):
 *
 *   tenant-router directory init -c FILE
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

int dircli_directory(int argc, char **argv);
int dircli_move(int argc, char **argv);
int dircli_plan(int argc, char **argv);

#endif /* TR_DIRCLI_H */
