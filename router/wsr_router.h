//  wsr_router — (placeholder)
#ifndef WSR_ROUTER_H_INCLUDED
#define WSR_ROUTER_H_INCLUDED
#endif
