/* SPDX-License-Identifier: GPL-2.0 */
#ifndef PAIR_H
#define PAIR_H
int pair_core_greet(const char *who);
#endif
