//  wsr_metrics — (placeholder)
#ifndef WSR_METRICS_H_INCLUDED
#define WSR_METRICS_H_INCLUDED
#endif
